// Package powershell drives the real products through their own
// management shells on Windows PowerShell 5.1: the Lync / Skype for
// Business Server module, the Exchange Management Shell's remote session to
// the local server, and the SharePoint snap-in or module.
//
// The driver never turns data into PowerShell code. It runs fixed scripts,
// embedded in the binary (scripts/*.ps1) and written to the agent's state
// directory, as long-lived workers:
//
//	powershell.exe -NoLogo -NoProfile -NonInteractive -ExecutionPolicy Bypass -File <state-dir>\powershell\scripts\lync.ps1
//
// and speaks to each one JSON lines: one request {"id","op","args"} per
// line on standard input, one response {"id","ok","result"|"error"} per line
// on standard output. Host names, partner names, realms, URLs, thumbprints
// and key-file passwords travel only inside that JSON. Failures come back
// as structured PowerShell errors (cmdlet, FullyQualifiedErrorId, category,
// message) and become the failed item's NACK text.
//
// Every call is bounded by a timeout that kills the worker's whole process
// tree (a Job object on Windows, the process group elsewhere); responses
// are size-capped and must be JSON; a worker that dies is started again on
// the next call.
package powershell

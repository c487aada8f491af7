# common.ps1: the JSON-lines worker loop that lync.ps1, exchange.ps1,
# sharepoint.ps1 and detect.ps1 dot-source from their own directory.
#
# Protocol (the Go side is agent/driver/powershell/worker.go): one request
# per line on standard input, {"id":N,"op":"name","args":{...}}; one response
# per line on standard output, {"id":N,"ok":true,"result":...} or
# {"id":N,"ok":false,"error":{"cmdlet","fullyQualifiedErrorId","category","message"}}.
# The loop ends when standard input closes.
#
# Rules every operation follows:
# - Values from the request are data: they are bound to cmdlet parameters,
#   never pasted into code (no Invoke-Expression, no [scriptblock]::Create).
# - Nothing but responses is written to standard output: cmdlet output is
#   captured or sent to $null, and the preference variables below silence
#   the progress, information and warning streams.
# - Results are explicit Select-Object / [ordered] projections converted
#   with ConvertTo-Json -Depth, whose default depth of 2 would truncate
#   nested objects.
#   https://learn.microsoft.com/powershell/module/microsoft.powershell.utility/convertto-json?view=powershell-5.1
# - No secret is written anywhere: key-file passwords arrive in the request
#   and go straight into a SecureString or the cmdlet's parameter.
#
# PowerShell's own cmdlets the scripts use, beside the products' (each of
# those is cited where it is called):
#   ConvertFrom-Json  https://learn.microsoft.com/powershell/module/microsoft.powershell.utility/convertfrom-json?view=powershell-5.1
#   ConvertTo-Json    https://learn.microsoft.com/powershell/module/microsoft.powershell.utility/convertto-json?view=powershell-5.1
#   Select-Object     https://learn.microsoft.com/powershell/module/microsoft.powershell.utility/select-object?view=powershell-5.1
#   Sort-Object       https://learn.microsoft.com/powershell/module/microsoft.powershell.utility/sort-object?view=powershell-5.1
#   Out-String        https://learn.microsoft.com/powershell/module/microsoft.powershell.utility/out-string?view=powershell-5.1
#   New-Object        https://learn.microsoft.com/powershell/module/microsoft.powershell.utility/new-object?view=powershell-5.1
#   Where-Object      https://learn.microsoft.com/powershell/module/microsoft.powershell.core/where-object?view=powershell-5.1
#   ForEach-Object    https://learn.microsoft.com/powershell/module/microsoft.powershell.core/foreach-object?view=powershell-5.1
#   Set-StrictMode    https://learn.microsoft.com/powershell/module/microsoft.powershell.core/set-strictmode?view=powershell-5.1
#   Join-Path         https://learn.microsoft.com/powershell/module/microsoft.powershell.management/join-path?view=powershell-5.1
#   Test-Path         https://learn.microsoft.com/powershell/module/microsoft.powershell.management/test-path?view=powershell-5.1
#   Get-Item          https://learn.microsoft.com/powershell/module/microsoft.powershell.management/get-item?view=powershell-5.1
#   Get-ChildItem     https://learn.microsoft.com/powershell/module/microsoft.powershell.management/get-childitem?view=powershell-5.1
#   Get-ItemProperty  https://learn.microsoft.com/powershell/module/microsoft.powershell.management/get-itemproperty?view=powershell-5.1
#   Remove-Item       https://learn.microsoft.com/powershell/module/microsoft.powershell.management/remove-item?view=powershell-5.1

Set-StrictMode -Version 2.0
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$WarningPreference = 'SilentlyContinue'
$InformationPreference = 'SilentlyContinue'
$VerbosePreference = 'SilentlyContinue'
# No cmdlet may wait for a confirmation nobody can give: -NonInteractive
# would fail it; $ConfirmPreference None lets -Confirm:$false decide.
# https://learn.microsoft.com/powershell/module/microsoft.powershell.core/about/about_preference_variables?view=powershell-5.1
$ConfirmPreference = 'None'

# UTF-8 without a byte-order mark on both pipes, whatever the console's code page.
# https://learn.microsoft.com/dotnet/api/system.console.outputencoding
$script:S2SUtf8 = New-Object System.Text.UTF8Encoding -ArgumentList $false
[Console]::InputEncoding = $script:S2SUtf8
[Console]::OutputEncoding = $script:S2SUtf8

# The deepest result any operation returns is a list of objects holding
# lists of strings; 8 leaves room and still bounds the output.
$script:S2SJsonDepth = 8

function Get-S2SArg {
    # Returns a request argument, or $Default when the request has none
    # (strict mode refuses reading an absent property directly).
    # $Arguments is not Mandatory: a request without args binds $null, which
    # a Mandatory parameter would refuse.
    param([AllowNull()] $Arguments, [Parameter(Mandatory = $true)] [string] $Name, $Default = $null)
    if ($null -eq $Arguments) { return $Default }
    $p = $Arguments.PSObject.Properties[$Name]
    if ($null -eq $p) { return $Default }
    return $p.Value
}

function Get-S2SRequiredArg {
    param([AllowNull()] $Arguments, [Parameter(Mandatory = $true)] [string] $Name)
    $v = Get-S2SArg -Arguments $Arguments -Name $Name
    if ($null -eq $v -or ($v -is [string] -and $v.Length -eq 0)) {
        $ex = New-Object System.ArgumentException -ArgumentList "the request has no value for argument $Name"
        throw (New-Object System.Management.Automation.ErrorRecord -ArgumentList $ex, 'S2SMissingArgument', ([System.Management.Automation.ErrorCategory]::InvalidArgument), $Name)
    }
    return $v
}

function Assert-S2SCommand {
    # Fails with a structured error naming the cmdlet when this shell does
    # not have it: the module is not loaded, or this product version lacks it.
    # https://learn.microsoft.com/powershell/module/microsoft.powershell.core/get-command?view=powershell-5.1
    param([Parameter(Mandatory = $true)] [string] $Name)
    if ($null -eq (Get-Command -Name $Name -ErrorAction SilentlyContinue)) {
        $ex = New-Object System.Management.Automation.CommandNotFoundException -ArgumentList "the cmdlet $Name is not available in this shell: the product's module is not loaded, or this product version does not have it"
        throw (New-Object System.Management.Automation.ErrorRecord -ArgumentList $ex, 'S2SCommandNotFound', ([System.Management.Automation.ErrorCategory]::ObjectNotFound), $Name)
    }
}

function ConvertTo-S2SDate {
    # Dates travel as ISO 8601 in UTC and reach the cmdlets as [datetime],
    # never as strings a locale would reinterpret.
    param([Parameter(Mandatory = $true)] [string] $Value)
    $styles = [System.Globalization.DateTimeStyles]::AdjustToUniversal -bor [System.Globalization.DateTimeStyles]::AssumeUniversal
    return [datetime]::Parse($Value, [System.Globalization.CultureInfo]::InvariantCulture, $styles)
}

function ConvertFrom-S2SDate {
    param($Value)
    if ($null -eq $Value) { return $null }
    return ([datetime]$Value).ToUniversalTime().ToString('o', [System.Globalization.CultureInfo]::InvariantCulture)
}

function New-S2SSecureString {
    # The key file's one-time password as the SecureString the cmdlets take.
    # https://learn.microsoft.com/powershell/module/microsoft.powershell.security/convertto-securestring?view=powershell-5.1
    param([Parameter(Mandatory = $true)] [string] $Plain)
    return (ConvertTo-SecureString -String $Plain -AsPlainText -Force)
}

function Remove-S2SKeyFile {
    # The Go side deletes the file too; this runs in the operation's finally.
    param([string] $Path)
    if ($Path -and (Test-Path -LiteralPath $Path)) {
        Remove-Item -LiteralPath $Path -Force -ErrorAction SilentlyContinue
    }
}

function ConvertTo-S2SErrorRecord {
    # Projects an ErrorRecord onto the four fields the driver reports.
    # https://learn.microsoft.com/dotnet/api/system.management.automation.errorrecord
    param([Parameter(Mandatory = $true)] $Record)
    $cmdlet = ''
    if ($Record.FullyQualifiedErrorId -like 'S2S*') {
        $cmdlet = [string]$Record.TargetObject
    } elseif ($null -ne $Record.InvocationInfo -and $null -ne $Record.InvocationInfo.MyCommand) {
        $cmdlet = [string]$Record.InvocationInfo.MyCommand.Name
    }
    $message = ''
    if ($null -ne $Record.Exception) { $message = [string]$Record.Exception.Message }
    if ($null -ne $Record.ErrorDetails -and $Record.ErrorDetails.Message) { $message = [string]$Record.ErrorDetails.Message }
    return [ordered]@{
        cmdlet                = $cmdlet
        fullyQualifiedErrorId = [string]$Record.FullyQualifiedErrorId
        category              = [string]$Record.CategoryInfo.Category
        message               = $message
    }
}

function Write-S2SLine {
    param([Parameter(Mandatory = $true)] $Object)
    $json = ConvertTo-Json -InputObject $Object -Depth $script:S2SJsonDepth -Compress
    [Console]::Out.Write($json)
    [Console]::Out.Write("`n")
    [Console]::Out.Flush()
}

function Invoke-S2SWorker {
    # Runs the loop: each request's op selects one of the script's fixed
    # scriptblocks in $Operations; an unknown op is refused.
    param([Parameter(Mandatory = $true)] [hashtable] $Operations)
    $stdin = [Console]::In
    while ($true) {
        $line = $stdin.ReadLine()
        if ($null -eq $line) { break }
        if ($line.Trim().Length -eq 0) { continue }
        $id = 0
        try {
            $req = ConvertFrom-Json -InputObject $line
            $id = [uint64]$req.id
            $op = [string]$req.op
            if (-not $Operations.ContainsKey($op)) {
                $ex = New-Object System.NotSupportedException -ArgumentList "this worker has no operation $op"
                throw (New-Object System.Management.Automation.ErrorRecord -ArgumentList $ex, 'S2SUnknownOperation', ([System.Management.Automation.ErrorCategory]::InvalidOperation), $op)
            }
            $opArgs = Get-S2SArg -Arguments $req -Name 'args'
            $operation = $Operations[$op]
            $result = & $operation $opArgs
            Write-S2SLine -Object ([ordered]@{ id = $id; ok = $true; result = $result })
        } catch {
            Write-S2SLine -Object ([ordered]@{ id = $id; ok = $false; error = (ConvertTo-S2SErrorRecord -Record $_) })
        }
    }
}

function Get-S2SHostFacts {
    # The Windows version decides the PFX encryption the driver sends
    # (3DES for Windows Server 2016 and older, AES-256 after).
    # https://learn.microsoft.com/dotnet/api/system.environment.osversion
    return [ordered]@{
        osVersion    = [System.Environment]::OSVersion.Version.ToString()
        psVersion    = $PSVersionTable.PSVersion.ToString()
        computerName = [System.Net.Dns]::GetHostEntry('').HostName
        productNames = (Get-S2SProductNames)
    }
}

function Get-S2SProductNames {
    # The products' names as Programs and Features lists them: they tell
    # 2019 from Subscription Edition where the builds share a major version.
    # https://learn.microsoft.com/windows/win32/msi/uninstall-registry-key
    $names = @(Get-ItemProperty -Path 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall\*' -ErrorAction SilentlyContinue |
        Where-Object { $null -ne $_.PSObject.Properties['DisplayName'] -and ([string]$_.DisplayName -match '^(Microsoft )?(Lync Server|Skype for Business Server|Exchange Server|SharePoint Server)') } |
        ForEach-Object { [string]$_.DisplayName } | Sort-Object -Unique)
    return , (ConvertTo-S2SStringList $names)
}

function Invoke-S2SMetadataGet {
    # The metadata GET from this host's vantage point: its DNS, proxy and
    # trust store. Returns the status and the body (bounded by the caller's
    # size limit on the whole response).
    # https://learn.microsoft.com/powershell/module/microsoft.powershell.utility/invoke-webrequest?view=powershell-5.1
    param([Parameter(Mandatory = $true)] $Arguments)
    $url = [string](Get-S2SRequiredArg -Arguments $Arguments -Name 'url')
    try {
        # -UseBasicParsing: no Internet Explorer engine on a server core
        # host or for a service account that never started IE.
        $r = Invoke-WebRequest -Uri $url -UseBasicParsing -Method Get -TimeoutSec 30 -MaximumRedirection 0
        return [ordered]@{ url = $url; status = [int]$r.StatusCode; body = [string]$r.Content; error = '' }
    } catch {
        $status = 0
        if ($null -ne $_.Exception.PSObject.Properties['Response'] -and $null -ne $_.Exception.Response) {
            $status = [int]$_.Exception.Response.StatusCode
        }
        return [ordered]@{ url = $url; status = $status; body = ''; error = [string]$_.Exception.Message }
    }
}

function Get-S2SProp {
    # Reads a property that some product versions lack: $null when absent,
    # so that a projection does not fail under strict mode.
    param($Object, [Parameter(Mandatory = $true)] [string] $Name)
    if ($null -eq $Object) { return $null }
    $p = $Object.PSObject.Properties[$Name]
    if ($null -eq $p) { return $null }
    return $p.Value
}

function ConvertTo-S2SStringList {
    # A multi-valued property (array, ArrayList, MultiValuedProperty, or a
    # deserialized copy of one) as a plain list of strings; always a list,
    # also with one element or none, which ConvertTo-Json would otherwise
    # flatten or drop.
    param($Value)
    $out = New-Object System.Collections.Generic.List[string]
    if ($null -ne $Value) {
        foreach ($v in @($Value)) { if ($null -ne $v) { $out.Add([string]$v) } }
    }
    return , $out.ToArray()
}

function Test-S2SThumbprint {
    # A Windows thumbprint: 40 hex digits, as the driver normalizes it.
    param([string] $Value)
    return ($Value -match '^[0-9A-Fa-f]{40}$')
}

function Get-S2SLocalCertificate {
    # The certificate with this thumbprint in the computer's personal store,
    # for the facts the product cmdlets do not show (private key present).
    # https://learn.microsoft.com/powershell/module/microsoft.powershell.security/about/about_certificate_provider?view=powershell-5.1
    param([string] $Thumbprint)
    if (-not (Test-S2SThumbprint $Thumbprint)) { return $null }
    return (Get-ChildItem -LiteralPath 'Cert:\LocalMachine\My' | Where-Object { $_.Thumbprint -eq $Thumbprint.ToUpperInvariant() } | Select-Object -First 1)
}

function ConvertTo-S2SCertificate {
    # The projection of an X509Certificate2 the driver reads (no key material).
    # https://learn.microsoft.com/dotnet/api/system.security.cryptography.x509certificates.x509certificate2
    param($Certificate)
    if ($null -eq $Certificate) { return $null }
    $dns = @()
    if ($null -ne (Get-S2SProp $Certificate 'DnsNameList')) { $dns = @($Certificate.DnsNameList | ForEach-Object { [string]$_.Unicode }) }
    return [ordered]@{
        thumbprint    = [string]$Certificate.Thumbprint
        subject       = [string]$Certificate.Subject
        issuer        = [string]$Certificate.Issuer
        notBefore     = ConvertFrom-S2SDate $Certificate.NotBefore
        notAfter      = ConvertFrom-S2SDate $Certificate.NotAfter
        hasPrivateKey = [bool]$Certificate.HasPrivateKey
        dnsNames      = (ConvertTo-S2SStringList $dns)
        rawData       = [System.Convert]::ToBase64String($Certificate.RawData)
    }
}

function Invoke-S2SRealmDiscovery {
    param([Parameter(Mandatory = $true)] $Arguments)
    # Realm autodiscovery: a request with an empty Bearer Authorization
    # header is answered 401 with WWW-Authenticate: Bearer client_id=…,
    # realm=… (SharePoint names its farm's realm), trusted_issuers=….
    # [MS-XOAUTH] 3.1.5.1 and 3.2.5.4:
    # https://learn.microsoft.com/openspecs/exchange_server_protocols/ms-xoauth/bca538e1-4a02-45af-a41c-441645506c93
    # https://learn.microsoft.com/powershell/module/microsoft.powershell.utility/invoke-webrequest?view=powershell-5.1
    $url = [string](Get-S2SRequiredArg $Arguments 'url')
    $status = 0
    $header = ''
    try {
        $r = Invoke-WebRequest -Uri $url -UseBasicParsing -Method Get -Headers @{ Authorization = 'Bearer ' } -TimeoutSec 30 -MaximumRedirection 0
        $status = [int]$r.StatusCode
        $header = [string]$r.Headers['WWW-Authenticate']
    } catch {
        $resp = $null
        if ($null -ne $_.Exception.PSObject.Properties['Response']) { $resp = $_.Exception.Response }
        if ($null -eq $resp) {
            return [ordered]@{ url = $url; status = 0; wwwAuthenticate = ''; error = [string]$_.Exception.Message }
        }
        $status = [int]$resp.StatusCode
        $header = [string]$resp.Headers['WWW-Authenticate']
    }
    return [ordered]@{ url = $url; status = $status; wwwAuthenticate = $header; error = '' }
}

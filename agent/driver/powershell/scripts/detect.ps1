# detect.ps1: finds which of the three products this host runs, and their
# versions, without loading any of their shells.
# Started by the s2s-agent as
#   powershell.exe -NoLogo -NoProfile -NonInteractive -ExecutionPolicy Bypass -File detect.ps1

. (Join-Path $PSScriptRoot 'common.ps1')

$operations = @{
    'init' = {
        param($a)
        return (Get-S2SHostFacts)
    }

    'detect' = {
        param($a)
        $found = New-Object System.Collections.Generic.List[object]
        # Lync Server 2013 installs the Lync module, Skype for Business
        # Server the SkypeForBusiness module.
        # https://learn.microsoft.com/powershell/module/microsoft.powershell.core/get-module?view=powershell-5.1
        foreach ($name in @('SkypeForBusiness', 'Lync')) {
            $m = Get-Module -ListAvailable -Name $name | Sort-Object -Property Version -Descending | Select-Object -First 1
            if ($null -ne $m) {
                $found.Add([ordered]@{ product = 'lync'; source = 'module ' + $name; version = [string]$m.Version; displayName = '' })
                break
            }
        }
        # Exchange: ExSetup.exe's product version is the build.
        # https://learn.microsoft.com/exchange/new-features/build-numbers-and-release-dates
        $root = [System.Environment]::GetEnvironmentVariable('ExchangeInstallPath', 'Machine')
        if ($root) {
            $exsetup = Join-Path (Join-Path $root 'Bin') 'ExSetup.exe'
            if (Test-Path -LiteralPath $exsetup) {
                $found.Add([ordered]@{ product = 'exchange'; source = 'ExSetup.exe'; version = [string](Get-Item -LiteralPath $exsetup).VersionInfo.ProductVersion; displayName = '' })
            }
        }
        # SharePoint: the snap-in (2013-2019) or the SharePointServer module (SE).
        # https://learn.microsoft.com/powershell/module/microsoft.powershell.core/get-pssnapin?view=powershell-5.1
        $snapin = Get-PSSnapin -Registered -Name 'Microsoft.SharePoint.PowerShell' -ErrorAction SilentlyContinue
        $spmod = Get-Module -ListAvailable -Name 'SharePointServer' | Select-Object -First 1
        if ($null -ne $snapin) {
            $found.Add([ordered]@{ product = 'sharepoint'; source = 'snap-in Microsoft.SharePoint.PowerShell'; version = [string]$snapin.Version; displayName = '' })
        } elseif ($null -ne $spmod) {
            $found.Add([ordered]@{ product = 'sharepoint'; source = 'module SharePointServer'; version = [string]$spmod.Version; displayName = '' })
        }
        return [ordered]@{ products = $found.ToArray(); productNames = (Get-S2SProductNames) }
    }
}

Invoke-S2SWorker -Operations $operations

# exchange.ps1: the Exchange Server worker.
# Started by the s2s-agent as
#   powershell.exe -NoLogo -NoProfile -NonInteractive -ExecutionPolicy Bypass -File exchange.ps1
# and driven through JSON lines (see common.ps1). The Exchange cmdlets run
# in the Exchange Management Shell's remote session to this server, opened
# once by "init" and kept for the worker's life.
#
# Cmdlet reference: https://learn.microsoft.com/powershell/module/exchangepowershell/

. (Join-Path $PSScriptRoot 'common.ps1')

$script:Session = $null

function Get-S2SExchangeScript {
    # Configure-EnterprisePartnerApplication.ps1 ships in the Scripts
    # directory of the Exchange installation.
    # https://learn.microsoft.com/exchange/configure-oauth-authentication-with-sharepoint-2013-and-lync-2013-exchange-2013-help
    $root = [System.Environment]::GetEnvironmentVariable('ExchangeInstallPath', 'Machine')
    if (-not $root) { $root = $env:ExchangeInstallPath }
    if (-not $root) {
        $ex = New-Object System.IO.DirectoryNotFoundException -ArgumentList 'the ExchangeInstallPath environment variable is not set: Exchange Server is not installed on this host'
        throw (New-Object System.Management.Automation.ErrorRecord -ArgumentList $ex, 'S2SExchangeNotInstalled', ([System.Management.Automation.ErrorCategory]::ObjectNotFound), 'Configure-EnterprisePartnerApplication.ps1')
    }
    return (Join-Path (Join-Path $root 'Scripts') 'Configure-EnterprisePartnerApplication.ps1')
}

function ConvertTo-S2SExchangePartner {
    # Get-PartnerApplication's object. CertificateStrings are the partner
    # certificates Exchange cached from its metadata (base64 DER).
    # https://learn.microsoft.com/powershell/module/exchangepowershell/get-partnerapplication
    param($App)
    return [ordered]@{
        name                                = [string](Get-S2SProp $App 'Name')
        applicationIdentifier               = [string](Get-S2SProp $App 'ApplicationIdentifier')
        authMetadataUrl                     = [string](Get-S2SProp $App 'AuthMetadataUrl')
        realm                               = [string](Get-S2SProp $App 'Realm')
        enabled                             = [bool](Get-S2SProp $App 'Enabled')
        acceptSecurityIdentifierInformation = [bool](Get-S2SProp $App 'AcceptSecurityIdentifierInformation')
        linkedAccount                       = [string](Get-S2SProp $App 'LinkedAccount')
        issuerIdentifier                    = [string](Get-S2SProp $App 'IssuerIdentifier')
        certificateStrings                  = (ConvertTo-S2SStringList (Get-S2SProp $App 'CertificateStrings'))
    }
}

$operations = @{
    'init' = {
        param($a)
        # The remote session to this server's own PowerShell virtual
        # directory, with Kerberos as the service account.
        # https://learn.microsoft.com/powershell/exchange/connect-to-exchange-servers-using-remote-powershell
        # https://learn.microsoft.com/powershell/module/microsoft.powershell.core/new-pssession?view=powershell-5.1
        # https://learn.microsoft.com/powershell/module/microsoft.powershell.utility/import-pssession?view=powershell-5.1
        $fqdn = [string](Get-S2SRequiredArg $a 'fqdn')
        if ([System.Uri]::CheckHostName($fqdn) -ne [System.UriHostNameType]::Dns) {
            $ex = New-Object System.ArgumentException -ArgumentList 'fqdn is not a DNS host name'
            throw (New-Object System.Management.Automation.ErrorRecord -ArgumentList $ex, 'S2SBadArgument', ([System.Management.Automation.ErrorCategory]::InvalidArgument), 'New-PSSession')
        }
        $uri = New-Object System.Uri -ArgumentList ('http://' + $fqdn + '/PowerShell/')
        $script:Session = New-PSSession -ConfigurationName Microsoft.Exchange -ConnectionUri $uri -Authentication Kerberos
        # -Global: Configure-EnterprisePartnerApplication.ps1 runs in its
        # own scope and calls the Exchange cmdlets itself.
        $module = Import-PSSession -Session $script:Session -DisableNameChecking -AllowClobber
        Import-Module -ModuleInfo $module -Global -DisableNameChecking
        Assert-S2SCommand 'Get-PartnerApplication'
        $facts = Get-S2SHostFacts
        # ExSetup.exe's file version is the installed build.
        # https://learn.microsoft.com/exchange/new-features/build-numbers-and-release-dates
        $facts.exchangeBuild = ''
        $root = [System.Environment]::GetEnvironmentVariable('ExchangeInstallPath', 'Machine')
        if ($root) {
            $exsetup = Join-Path (Join-Path $root 'Bin') 'ExSetup.exe'
            if (Test-Path -LiteralPath $exsetup) { $facts.exchangeBuild = [string](Get-Item -LiteralPath $exsetup).VersionInfo.ProductVersion }
        }
        return $facts
    }

    'get-partner-applications' = {
        param($a)
        # https://learn.microsoft.com/powershell/module/exchangepowershell/get-partnerapplication
        Assert-S2SCommand 'Get-PartnerApplication'
        $apps = @(Get-PartnerApplication)
        return , @($apps | ForEach-Object { ConvertTo-S2SExchangePartner $_ })
    }

    'get-auth-config' = {
        param($a)
        # https://learn.microsoft.com/powershell/module/exchangepowershell/get-authconfig
        Assert-S2SCommand 'Get-AuthConfig'
        $c = Get-AuthConfig
        return [ordered]@{
            serviceName                   = [string](Get-S2SProp $c 'ServiceName')
            realm                         = [string](Get-S2SProp $c 'Realm')
            currentCertificateThumbprint  = [string](Get-S2SProp $c 'CurrentCertificateThumbprint')
            previousCertificateThumbprint = [string](Get-S2SProp $c 'PreviousCertificateThumbprint')
            nextCertificateThumbprint     = [string](Get-S2SProp $c 'NextCertificateThumbprint')
            nextCertificateEffectiveDate  = ConvertFrom-S2SDate (Get-S2SProp $c 'NextCertificateEffectiveDate')
        }
    }

    'get-exchange-certificates' = {
        param($a)
        # This server's certificates (the remote session is to this server).
        # https://learn.microsoft.com/powershell/module/exchangepowershell/get-exchangecertificate
        Assert-S2SCommand 'Get-ExchangeCertificate'
        $certs = @(Get-ExchangeCertificate)
        return , @($certs | ForEach-Object {
                # The DER comes from the computer's own store: the worker
                # runs on this server, the remote session's copy is
                # deserialized.
                $local = Get-S2SLocalCertificate -Thumbprint ([string](Get-S2SProp $_ 'Thumbprint'))
                $raw = ''
                if ($null -ne $local) { $raw = [System.Convert]::ToBase64String($local.RawData) }
                [ordered]@{
                    thumbprint         = [string](Get-S2SProp $_ 'Thumbprint')
                    subject            = [string](Get-S2SProp $_ 'Subject')
                    issuer             = [string](Get-S2SProp $_ 'Issuer')
                    notBefore          = ConvertFrom-S2SDate (Get-S2SProp $_ 'NotBefore')
                    notAfter           = ConvertFrom-S2SDate (Get-S2SProp $_ 'NotAfter')
                    hasPrivateKey      = [bool](Get-S2SProp $_ 'HasPrivateKey')
                    certificateDomains = (ConvertTo-S2SStringList (Get-S2SProp $_ 'CertificateDomains'))
                    services           = [string](Get-S2SProp $_ 'Services')
                    rawData            = $raw
                }
            })
    }

    'configure-partner-application' = {
        param($a)
        # Creates the partner (under a name of its own choosing) and its
        # linked account with the roles it needs: -ApplicationType Lync or
        # SharePoint, -AuthMetadataUrl.
        # https://learn.microsoft.com/exchange/configure-oauth-authentication-with-sharepoint-2013-and-lync-2013-exchange-2013-help
        $type = [string](Get-S2SRequiredArg $a 'applicationType')
        if (@('Lync', 'SharePoint') -notcontains $type) {
            $ex = New-Object System.ArgumentException -ArgumentList 'applicationType must be Lync or SharePoint'
            throw (New-Object System.Management.Automation.ErrorRecord -ArgumentList $ex, 'S2SBadArgument', ([System.Management.Automation.ErrorCategory]::InvalidArgument), 'Configure-EnterprisePartnerApplication.ps1')
        }
        $url = [string](Get-S2SRequiredArg $a 'authMetadataUrl')
        $path = Get-S2SExchangeScript
        $out = & $path -ApplicationType $type -AuthMetadataUrl $url 2>&1 | Out-String
        # The script names the partner itself: find it by its URL, and
        # disable it when the topology says so (the script has no -Enabled).
        $app = @(Get-PartnerApplication | Where-Object { [string](Get-S2SProp $_ 'AuthMetadataUrl') -eq $url }) | Select-Object -First 1
        if ($null -eq $app) {
            $ex = New-Object System.Management.Automation.ItemNotFoundException -ArgumentList ('Configure-EnterprisePartnerApplication.ps1 ran but no partner application has AuthMetadataUrl ' + $url + ': ' + $out.Trim())
            throw (New-Object System.Management.Automation.ErrorRecord -ArgumentList $ex, 'S2SPartnerNotCreated', ([System.Management.Automation.ErrorCategory]::ObjectNotFound), 'Configure-EnterprisePartnerApplication.ps1')
        }
        $enabled = Get-S2SArg $a 'enabled'
        if ($null -ne $enabled -and -not [bool]$enabled) {
            Set-PartnerApplication -Identity ([string]$app.Name) -Enabled $false -Confirm:$false
            $app = Get-PartnerApplication -Identity ([string]$app.Name)
        }
        return (ConvertTo-S2SExchangePartner $app)
    }

    'new-partner-application' = {
        param($a)
        # For partners other than Lync and SharePoint: the AuthMetadataUrl
        # parameter set, -Name -AuthMetadataUrl [-Enabled].
        # https://learn.microsoft.com/powershell/module/exchangepowershell/new-partnerapplication
        Assert-S2SCommand 'New-PartnerApplication'
        $p = @{ Name = [string](Get-S2SRequiredArg $a 'name'); AuthMetadataUrl = [string](Get-S2SRequiredArg $a 'authMetadataUrl'); Confirm = $false }
        $enabled = Get-S2SArg $a 'enabled'
        if ($null -ne $enabled) { $p.Enabled = [bool]$enabled }
        $app = New-PartnerApplication @p
        return (ConvertTo-S2SExchangePartner $app)
    }

    'set-partner-application' = {
        param($a)
        # -Enabled, -AuthMetadataUrl (the AuthMetadataUrl parameter set), or
        # -RefreshAuthMetadata alone (its own parameter set) to re-read the
        # partner's metadata and cached keys.
        # https://learn.microsoft.com/powershell/module/exchangepowershell/set-partnerapplication
        Assert-S2SCommand 'Set-PartnerApplication'
        $p = @{ Identity = [string](Get-S2SRequiredArg $a 'identity'); Confirm = $false }
        if ([bool](Get-S2SArg $a 'refreshAuthMetadata' $false)) {
            $p.RefreshAuthMetadata = $true
        } else {
            $enabled = Get-S2SArg $a 'enabled'
            if ($null -ne $enabled) { $p.Enabled = [bool]$enabled }
            $url = Get-S2SArg $a 'authMetadataUrl'
            if ($url) { $p.AuthMetadataUrl = [string]$url }
        }
        Set-PartnerApplication @p
        return (ConvertTo-S2SExchangePartner (Get-PartnerApplication -Identity $p.Identity))
    }

    'remove-partner-application' = {
        param($a)
        # https://learn.microsoft.com/powershell/module/exchangepowershell/remove-partnerapplication
        Assert-S2SCommand 'Remove-PartnerApplication'
        Remove-PartnerApplication -Identity ([string](Get-S2SRequiredArg $a 'identity')) -Confirm:$false
        return [ordered]@{ removed = $true }
    }

    'set-auth-config' = {
        param($a)
        # One of Set-AuthConfig's parameter sets per call:
        # AuthConfigSettings (-Realm; that set has no -Force),
        # CurrentCertificateParameter (-CertificateThumbprint -Force),
        # NewCertificateParameter
        # (-NewCertificateThumbprint -NewCertificateEffectiveDate [datetime]
        # -Force), PublishAuthCertificateParameter (-PublishCertificate, or
        # -ClearPreviousCertificate).
        # https://learn.microsoft.com/powershell/module/exchangepowershell/set-authconfig
        Assert-S2SCommand 'Set-AuthConfig'
        $p = @{ Confirm = $false }
        switch ([string](Get-S2SRequiredArg $a 'action')) {
            'realm' { $p.Realm = [string](Get-S2SArg $a 'realm' '') }
            'new-certificate' {
                $t = [string](Get-S2SRequiredArg $a 'thumbprint')
                if (-not (Test-S2SThumbprint $t)) {
                    $ex = New-Object System.ArgumentException -ArgumentList 'thumbprint must be 40 hexadecimal digits'
                    throw (New-Object System.Management.Automation.ErrorRecord -ArgumentList $ex, 'S2SBadArgument', ([System.Management.Automation.ErrorCategory]::InvalidArgument), 'Set-AuthConfig')
                }
                $p.NewCertificateThumbprint = $t
                # -NewCertificateEffectiveDate is optional in that set.
                $eff = Get-S2SArg $a 'effectiveDate'
                if ($eff) { $p.NewCertificateEffectiveDate = (ConvertTo-S2SDate ([string]$eff)) }
                $p.Force = $true
            }
            'current-certificate' {
                $t = [string](Get-S2SRequiredArg $a 'thumbprint')
                if (-not (Test-S2SThumbprint $t)) {
                    $ex = New-Object System.ArgumentException -ArgumentList 'thumbprint must be 40 hexadecimal digits'
                    throw (New-Object System.Management.Automation.ErrorRecord -ArgumentList $ex, 'S2SBadArgument', ([System.Management.Automation.ErrorCategory]::InvalidArgument), 'Set-AuthConfig')
                }
                $p.CertificateThumbprint = $t
                $p.Force = $true
            }
            'publish' { $p.PublishCertificate = $true }
            'clear-previous' { $p.ClearPreviousCertificate = $true }
            default {
                $ex = New-Object System.ArgumentException -ArgumentList 'action must be realm, current-certificate, new-certificate, publish or clear-previous'
                throw (New-Object System.Management.Automation.ErrorRecord -ArgumentList $ex, 'S2SBadArgument', ([System.Management.Automation.ErrorCategory]::InvalidArgument), 'Set-AuthConfig')
            }
        }
        Set-AuthConfig @p
        return [ordered]@{ updated = $true }
    }

    'import-exchange-certificate' = {
        param($a)
        # The FileData parameter set: the bytes cross the remote session,
        # the one-time password as a SecureString built here.
        # https://learn.microsoft.com/powershell/module/exchangepowershell/import-exchangecertificate
        Assert-S2SCommand 'Import-ExchangeCertificate'
        $path = [string](Get-S2SRequiredArg $a 'pfxPath')
        try {
            $pw = New-S2SSecureString -Plain ([string](Get-S2SRequiredArg $a 'pfxPassword'))
            $bytes = [System.IO.File]::ReadAllBytes($path)
            $c = Import-ExchangeCertificate -FileData $bytes -Password $pw -PrivateKeyExportable $false -Confirm:$false
            return [ordered]@{ thumbprint = [string](Get-S2SProp $c 'Thumbprint') }
        } finally {
            Remove-S2SKeyFile -Path $path
        }
    }

    'iisreset' = {
        param($a)
        # Advised after partner changes; disruptive, so the controller paces
        # it across a rollout. /noforce: no forced termination of IIS
        # processes that do not stop in time. No Microsoft reference page for
        # iisreset.exe was found in our searches (only IIS team blog posts
        # such as https://blogs.msdn.microsoft.com/friis/2013/10/08/iisreset-internals/);
        # the switch is as the tool's own /? describes it.
        $exe = Join-Path ([System.Environment]::GetFolderPath('System')) 'iisreset.exe'
        $out = & $exe '/noforce' 2>&1 | Out-String
        return [ordered]@{ exitCode = [int]$LASTEXITCODE; output = $out.Trim() }
    }

    'test-oauth-connectivity' = {
        param($a)
        # -Service EWS|AutoD|Generic -TargetUri [-Mailbox].
        # https://learn.microsoft.com/powershell/module/exchangepowershell/test-oauthconnectivity
        # That page does not document the output's properties: ResultType
        # and Detail are read where present, and the text of the whole
        # output is returned beside them.
        Assert-S2SCommand 'Test-OAuthConnectivity'
        $p = @{ Service = [string](Get-S2SRequiredArg $a 'service'); TargetUri = [string](Get-S2SRequiredArg $a 'targetUri'); Confirm = $false }
        $mbx = Get-S2SArg $a 'mailbox'
        if ($mbx) { $p.Mailbox = [string]$mbx }
        $r = @(Test-OAuthConnectivity @p)
        $resultType = ''
        $detail = ''
        foreach ($x in $r) {
            $rt = Get-S2SProp $x 'ResultType'
            if ($null -ne $rt) { $resultType = [string]$rt }
            $d = Get-S2SProp $x 'Detail'
            if ($null -ne $d) { $detail = [string]$d }
        }
        return [ordered]@{ resultType = $resultType; detail = $detail; text = ($r | Out-String).Trim() }
    }

    'realm-discovery' = {
        param($a)
        return (Invoke-S2SRealmDiscovery -Arguments $a)
    }

    'metadata-get' = {
        param($a)
        return (Invoke-S2SMetadataGet -Arguments $a)
    }
}

try {
    Invoke-S2SWorker -Operations $operations
} finally {
    # https://learn.microsoft.com/powershell/module/microsoft.powershell.core/remove-pssession?view=powershell-5.1
    if ($null -ne $script:Session) { Remove-PSSession -Session $script:Session -ErrorAction SilentlyContinue }
}

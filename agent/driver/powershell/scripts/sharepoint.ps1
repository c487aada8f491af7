# sharepoint.ps1: the SharePoint Server worker.
# Started by the s2s-agent as
#   powershell.exe -NoLogo -NoProfile -NonInteractive -ExecutionPolicy Bypass -File sharepoint.ps1
# and driven through JSON lines (see common.ps1).
#
# Cmdlet reference: https://learn.microsoft.com/powershell/module/sharepoint-server/

. (Join-Path $PSScriptRoot 'common.ps1')

$script:Shell = ''

function ConvertTo-S2SIssuer {
    # Get-SPTrustedSecurityTokenIssuer's object. It has no IsTrustBroker
    # property; IsSelfIssuer is its complement.
    # https://learn.microsoft.com/powershell/module/sharepoint-server/get-sptrustedsecuritytokenissuer
    param($Issuer)
    $endpoint = Get-S2SProp $Issuer 'MetadataEndPoint'
    $signing = Get-S2SProp $Issuer 'SigningCertificate'
    $additional = @()
    $more = Get-S2SProp $Issuer 'AdditionalSigningCertificates'
    if ($null -ne $more) { $additional = @($more | ForEach-Object { [string]$_.Thumbprint }) }
    $self = Get-S2SProp $Issuer 'IsSelfIssuer'
    return [ordered]@{
        name                  = [string](Get-S2SProp $Issuer 'Name')
        registeredIssuerName  = [string](Get-S2SProp $Issuer 'RegisteredIssuerName')
        metadataEndPoint      = $(if ($null -ne $endpoint) { [string]$endpoint.OriginalString } else { '' })
        isSelfIssuer          = [bool]$self
        signingThumbprint     = $(if ($null -ne $signing) { [string]$signing.Thumbprint } else { '' })
        additionalThumbprints = (ConvertTo-S2SStringList $additional)
    }
}

function Get-S2SAppPrincipal {
    # The app principal of a partner (e.g. Exchange, 00000002-…) in the
    # site's realm: <client id>@<realm>.
    # https://learn.microsoft.com/powershell/module/sharepoint-server/get-spappprincipal
    # https://learn.microsoft.com/powershell/module/sharepoint-server/get-spauthenticationrealm
    # https://learn.microsoft.com/powershell/module/sharepoint-server/get-spsite
    param($Arguments)
    $site = Get-SPSite -Identity ([string](Get-S2SRequiredArg $Arguments 'siteUrl'))
    $realm = Get-SPAuthenticationRealm -ServiceContext $site
    $id = [string](Get-S2SRequiredArg $Arguments 'clientId') + '@' + $realm
    $principal = Get-SPAppPrincipal -Site $site.RootWeb -NameIdentifier $id
    return @{ site = $site; principal = $principal; nameIdentifier = $id }
}

$operations = @{
    'init' = {
        param($a)
        # SharePoint 2013-2019: the Microsoft.SharePoint.PowerShell snap-in;
        # Subscription Edition: the SharePointServer module.
        # https://learn.microsoft.com/powershell/module/microsoft.powershell.core/add-pssnapin?view=powershell-5.1
        # https://learn.microsoft.com/powershell/module/microsoft.powershell.core/get-pssnapin?view=powershell-5.1
        # https://learn.microsoft.com/powershell/module/sharepoint-server/?view=sharepoint-server-ps
        if ($null -ne (Get-PSSnapin -Registered -Name 'Microsoft.SharePoint.PowerShell' -ErrorAction SilentlyContinue)) {
            Add-PSSnapin -Name 'Microsoft.SharePoint.PowerShell'
            $script:Shell = 'Microsoft.SharePoint.PowerShell'
        } elseif ($null -ne (Get-Module -ListAvailable -Name 'SharePointServer')) {
            Import-Module -Name 'SharePointServer' -DisableNameChecking
            $script:Shell = 'SharePointServer'
        } else {
            $ex = New-Object System.IO.FileNotFoundException -ArgumentList 'neither the Microsoft.SharePoint.PowerShell snap-in nor the SharePointServer module is installed on this host'
            throw (New-Object System.Management.Automation.ErrorRecord -ArgumentList $ex, 'S2SModuleNotInstalled', ([System.Management.Automation.ErrorCategory]::ObjectNotFound), 'Add-PSSnapin')
        }
        Assert-S2SCommand 'Get-SPTrustedSecurityTokenIssuer'
        $facts = Get-S2SHostFacts
        $facts.shell = $script:Shell
        # The farm's build: 15.0 is 2013; 16.0 is 2016, 2019 and SE, told
        # apart by build number.
        # https://learn.microsoft.com/powershell/module/sharepoint-server/get-spfarm
        # https://learn.microsoft.com/officeupdates/sharepoint-updates
        $facts.farmBuild = [string](Get-SPFarm).BuildVersion
        return $facts
    }

    'get-trusted-issuers' = {
        param($a)
        # https://learn.microsoft.com/powershell/module/sharepoint-server/get-sptrustedsecuritytokenissuer
        Assert-S2SCommand 'Get-SPTrustedSecurityTokenIssuer'
        $issuers = @(Get-SPTrustedSecurityTokenIssuer)
        return , @($issuers | ForEach-Object { ConvertTo-S2SIssuer $_ })
    }

    'get-authentication-realm' = {
        param($a)
        # The farm's realm (its farm id unless set).
        # https://learn.microsoft.com/powershell/module/sharepoint-server/get-spauthenticationrealm
        Assert-S2SCommand 'Get-SPAuthenticationRealm'
        return [ordered]@{ realm = [string](Get-SPAuthenticationRealm) }
    }

    'get-sts-config' = {
        param($a)
        # AllowOAuthOverHttp and AllowMetadataOverHttp must be false: S2S
        # endpoints require SSL.
        # https://learn.microsoft.com/powershell/module/sharepoint-server/get-spsecuritytokenserviceconfig
        Assert-S2SCommand 'Get-SPSecurityTokenServiceConfig'
        $c = Get-SPSecurityTokenServiceConfig
        $signing = Get-S2SProp $c 'SigningCertificate'
        $queued = Get-S2SProp $c 'QueueSigningCertificate'
        return [ordered]@{
            nameIdentifier             = [string](Get-S2SProp $c 'NameIdentifier')
            allowOAuthOverHttp         = [bool](Get-S2SProp $c 'AllowOAuthOverHttp')
            allowMetadataOverHttp      = [bool](Get-S2SProp $c 'AllowMetadataOverHttp')
            signingCertificate         = (ConvertTo-S2SCertificate $signing)
            queueSigningCertificate    = (ConvertTo-S2SCertificate $queued)
        }
    }

    'get-app-principal-permission' = {
        param($a)
        # The site subscription (tenant) scoped content permission of the
        # partner's app principal, and whether its app-only policy is allowed.
        # https://learn.microsoft.com/previous-versions/office/sharepoint-server/jj175803(v=office.15)
        # https://learn.microsoft.com/previous-versions/office/sharepoint-server/jj173604(v=office.15)
        Assert-S2SCommand 'Get-SPAppPrincipal'
        $x = Get-S2SAppPrincipal $a
        if ($null -eq $x.principal) {
            return [ordered]@{ nameIdentifier = $x.nameIdentifier; found = $false; right = ''; appOnly = $false }
        }
        $m = New-Object Microsoft.SharePoint.SPAppPrincipalPermissionsManager -ArgumentList $x.site.RootWeb
        $right = $m.GetAppPrincipalSiteSubscriptionContentPermission($x.principal)
        return [ordered]@{ nameIdentifier = $x.nameIdentifier; found = $true; right = [string]$right; appOnly = [bool]$m.IsAppOnlyPolicyAllowed($x.principal) }
    }

    'new-trusted-issuer' = {
        param($a)
        # The MetadataEndPointParameterSet; -IsTrustBroker for Lync, none
        # for Exchange (a self-issuer).
        # https://learn.microsoft.com/powershell/module/sharepoint-server/new-sptrustedsecuritytokenissuer
        Assert-S2SCommand 'New-SPTrustedSecurityTokenIssuer'
        $p = @{
            Name             = [string](Get-S2SRequiredArg $a 'name')
            MetadataEndPoint = (New-Object System.Uri -ArgumentList ([string](Get-S2SRequiredArg $a 'metadataEndPoint')))
            Confirm          = $false
        }
        if ([bool](Get-S2SArg $a 'isTrustBroker' $false)) { $p.IsTrustBroker = $true }
        $i = New-SPTrustedSecurityTokenIssuer @p
        return (ConvertTo-S2SIssuer $i)
    }

    'set-trusted-issuer' = {
        param($a)
        # Re-points an issuer: MetadataEndPointParameterSet. With the same
        # URL it re-reads the issuer's metadata and signing certificate (a
        # rotation's refresh).
        # https://learn.microsoft.com/powershell/module/sharepoint-server/set-sptrustedsecuritytokenissuer
        Assert-S2SCommand 'Set-SPTrustedSecurityTokenIssuer'
        $p = @{
            Identity         = [string](Get-S2SRequiredArg $a 'name')
            MetadataEndPoint = (New-Object System.Uri -ArgumentList ([string](Get-S2SRequiredArg $a 'metadataEndPoint')))
            Confirm          = $false
        }
        # A switch: -IsTrustBroker:$false turns it off.
        $tb = Get-S2SArg $a 'isTrustBroker'
        if ($null -ne $tb) { $p.IsTrustBroker = [bool]$tb }
        $null = Set-SPTrustedSecurityTokenIssuer @p
        return (ConvertTo-S2SIssuer (Get-SPTrustedSecurityTokenIssuer -Identity $p.Identity))
    }

    'remove-trusted-issuer' = {
        param($a)
        # https://learn.microsoft.com/powershell/module/sharepoint-server/remove-sptrustedsecuritytokenissuer
        Assert-S2SCommand 'Remove-SPTrustedSecurityTokenIssuer'
        Remove-SPTrustedSecurityTokenIssuer -Identity ([string](Get-S2SRequiredArg $a 'name')) -Confirm:$false
        return [ordered]@{ removed = $true }
    }

    'set-authentication-realm' = {
        param($a)
        # Changing a live farm's realm breaks its existing app principals:
        # the reconciler sends this only when the topology declares a realm.
        # https://learn.microsoft.com/powershell/module/sharepoint-server/set-spauthenticationrealm
        Assert-S2SCommand 'Set-SPAuthenticationRealm'
        Set-SPAuthenticationRealm -Realm ([string](Get-S2SRequiredArg $a 'realm')) -Confirm:$false
        return [ordered]@{ updated = $true }
    }

    'set-app-principal-permission' = {
        param($a)
        # For Exchange to search SharePoint: -Scope SiteSubscription -Right
        # FullControl -EnableAppOnlyPolicy on Exchange's app principal.
        # https://learn.microsoft.com/powershell/module/sharepoint-server/set-spappprincipalpermission
        Assert-S2SCommand 'Set-SPAppPrincipalPermission'
        $x = Get-S2SAppPrincipal $a
        if ($null -eq $x.principal) {
            $ex = New-Object System.Management.Automation.ItemNotFoundException -ArgumentList ('no app principal ' + $x.nameIdentifier + ' in this site: register the partner first')
            throw (New-Object System.Management.Automation.ErrorRecord -ArgumentList $ex, 'S2SAppPrincipalNotFound', ([System.Management.Automation.ErrorCategory]::ObjectNotFound), 'Get-SPAppPrincipal')
        }
        Set-SPAppPrincipalPermission -AppPrincipal $x.principal -Site $x.site.RootWeb -Scope SiteSubscription -Right FullControl -EnableAppOnlyPolicy -Confirm:$false
        return [ordered]@{ updated = $true }
    }

    'set-sts-http' = {
        param($a)
        # Set-SPSecurityTokenServiceConfig has no AllowOAuthOverHttp or
        # AllowMetadataOverHttp parameter (its page lists none); they are
        # properties of the object Get-SPSecurityTokenServiceConfig returns,
        # saved with Update().
        # https://learn.microsoft.com/powershell/module/sharepoint-server/set-spsecuritytokenserviceconfig
        # https://learn.microsoft.com/powershell/module/sharepoint-server/get-spsecuritytokenserviceconfig
        Assert-S2SCommand 'Get-SPSecurityTokenServiceConfig'
        $c = Get-SPSecurityTokenServiceConfig
        $c.AllowOAuthOverHttp = [bool](Get-S2SArg $a 'allowOAuthOverHttp' $false)
        $c.AllowMetadataOverHttp = [bool](Get-S2SArg $a 'allowMetadataOverHttp' $false)
        $c.Update()
        return [ordered]@{ updated = $true }
    }

    'import-signing-certificate' = {
        param($a)
        # Replaces the farm STS's signing certificate
        # (-ImportSigningCertificate <X509Certificate2>), built here from the
        # one-time key file with its password as a SecureString.
        # https://learn.microsoft.com/powershell/module/sharepoint-server/set-spsecuritytokenserviceconfig
        # https://learn.microsoft.com/dotnet/api/system.security.cryptography.x509certificates.x509certificate2.-ctor
        Assert-S2SCommand 'Set-SPSecurityTokenServiceConfig'
        $path = [string](Get-S2SRequiredArg $a 'pfxPath')
        try {
            $pw = New-S2SSecureString -Plain ([string](Get-S2SRequiredArg $a 'pfxPassword'))
            $flags = [System.Security.Cryptography.X509Certificates.X509KeyStorageFlags]::MachineKeySet -bor [System.Security.Cryptography.X509Certificates.X509KeyStorageFlags]::PersistKeySet
            $cert = New-Object System.Security.Cryptography.X509Certificates.X509Certificate2 -ArgumentList $path, $pw, $flags
            Set-SPSecurityTokenServiceConfig -ImportSigningCertificate $cert -Confirm:$false
            return [ordered]@{ thumbprint = [string]$cert.Thumbprint }
        } finally {
            Remove-S2SKeyFile -Path $path
        }
    }

    'iisreset' = {
        param($a)
        # Microsoft's "Replace the STS certificate" procedure resets IIS on
        # every server of the farm after -ImportSigningCertificate, then
        # restarts the Timer Service ('restart-timer'):
        # https://learn.microsoft.com/sharepoint/administration/replace-the-sts-certificate
        # Disruptive, so the controller paces it across a rollout. /noforce
        # as in exchange.ps1's 'iisreset' (no Microsoft reference page for
        # iisreset.exe's switches was found; the tool's own /? describes it).
        $exe = Join-Path ([System.Environment]::GetFolderPath('System')) 'iisreset.exe'
        $out = & $exe '/noforce' 2>&1 | Out-String
        return [ordered]@{ exitCode = [int]$LASTEXITCODE; output = $out.Trim() }
    }

    'restart-timer' = {
        param($a)
        # The SharePoint Timer Service (SPTimerV4), restarted on every
        # server after the STS certificate changed, as the same page does:
        # https://learn.microsoft.com/sharepoint/administration/replace-the-sts-certificate
        # https://learn.microsoft.com/powershell/module/microsoft.powershell.management/restart-service
        Restart-Service -Name 'SPTimerV4' -ErrorAction Stop
        return [ordered]@{ restarted = 'SPTimerV4' }
    }

    'set-signing-certificate' = {
        param($a)
        # A certificate already in the computer's store, by thumbprint: the
        # SigningCertificateReference parameter set.
        # https://learn.microsoft.com/powershell/module/sharepoint-server/set-spsecuritytokenserviceconfig
        Assert-S2SCommand 'Set-SPSecurityTokenServiceConfig'
        $t = [string](Get-S2SRequiredArg $a 'thumbprint')
        if (-not (Test-S2SThumbprint $t)) {
            $ex = New-Object System.ArgumentException -ArgumentList 'thumbprint must be 40 hexadecimal digits'
            throw (New-Object System.Management.Automation.ErrorRecord -ArgumentList $ex, 'S2SBadArgument', ([System.Management.Automation.ErrorCategory]::InvalidArgument), 'Set-SPSecurityTokenServiceConfig')
        }
        Set-SPSecurityTokenServiceConfig -SigningCertificateThumbprint $t -Confirm:$false
        return [ordered]@{ thumbprint = $t }
    }

    'queue-signing-certificate' = {
        param($a)
        # Stages the farm STS's next signing certificate
        # (-QueueSigningCertificate <X509Certificate2>), built here from the
        # one-time key file with its password as a SecureString.
        # https://learn.microsoft.com/powershell/module/sharepoint-server/set-spsecuritytokenserviceconfig
        # https://learn.microsoft.com/dotnet/api/system.security.cryptography.x509certificates.x509certificate2.-ctor
        Assert-S2SCommand 'Set-SPSecurityTokenServiceConfig'
        $path = [string](Get-S2SRequiredArg $a 'pfxPath')
        try {
            $pw = New-S2SSecureString -Plain ([string](Get-S2SRequiredArg $a 'pfxPassword'))
            $flags = [System.Security.Cryptography.X509Certificates.X509KeyStorageFlags]::MachineKeySet -bor [System.Security.Cryptography.X509Certificates.X509KeyStorageFlags]::PersistKeySet
            $cert = New-Object System.Security.Cryptography.X509Certificates.X509Certificate2 -ArgumentList $path, $pw, $flags
            Set-SPSecurityTokenServiceConfig -QueueSigningCertificate $cert -Confirm:$false
            return [ordered]@{ thumbprint = [string]$cert.Thumbprint }
        } finally {
            Remove-S2SKeyFile -Path $path
        }
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

Invoke-S2SWorker -Operations $operations

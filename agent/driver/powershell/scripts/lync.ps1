# lync.ps1: the Lync Server 2013 / Skype for Business Server worker.
# Started by the s2s-agent as
#   powershell.exe -NoLogo -NoProfile -NonInteractive -ExecutionPolicy Bypass -File lync.ps1
# and driven through JSON lines (see common.ps1). Every value below that
# names a partner, a realm, a URL, a thumbprint or a file arrives in the
# request's args and is bound to a cmdlet parameter, never run as code.
#
# Cmdlet reference: https://learn.microsoft.com/powershell/module/skypeforbusiness/

. (Join-Path $PSScriptRoot 'common.ps1')

$script:Module = $null

# Trust levels as New/Set-CsPartnerApplication take -ApplicationTrustLevel.
$script:TrustLevels = @('Full', 'Application', 'User')

function Get-S2STrustLevel {
    param($Arguments)
    $level = [string](Get-S2SRequiredArg -Arguments $Arguments -Name 'applicationTrustLevel')
    if ($script:TrustLevels -notcontains $level) {
        $ex = New-Object System.ArgumentException -ArgumentList "applicationTrustLevel must be Full, Application or User"
        throw (New-Object System.Management.Automation.ErrorRecord -ArgumentList $ex, 'S2SBadArgument', ([System.Management.Automation.ErrorCategory]::InvalidArgument), 'applicationTrustLevel')
    }
    return $level
}

function ConvertTo-S2SPartner {
    # Get-CsPartnerApplication's object, projected onto the fields the
    # driver compares (the shape the sim reports).
    # https://learn.microsoft.com/powershell/module/skypeforbusiness/get-cspartnerapplication
    param($App)
    return [ordered]@{
        identity                            = [string](Get-S2SProp $App 'Identity')
        name                                = [string](Get-S2SProp $App 'Name')
        applicationIdentifier               = [string](Get-S2SProp $App 'ApplicationIdentifier')
        metadataUrl                         = [string](Get-S2SProp $App 'MetadataUrl')
        realm                               = [string](Get-S2SProp $App 'Realm')
        applicationTrustLevel               = [string](Get-S2SProp $App 'ApplicationTrustLevel')
        enabled                             = [bool](Get-S2SProp $App 'Enabled')
        acceptSecurityIdentifierInformation = [bool](Get-S2SProp $App 'AcceptSecurityIdentifierInformation')
    }
}

function ConvertTo-S2SCsCertificate {
    # Get-CsCertificate's CertificateReference, with the private-key fact
    # from the computer's store.
    # https://learn.microsoft.com/powershell/module/skypeforbusiness/get-cscertificate
    param($Ref)
    $thumb = [string](Get-S2SProp $Ref 'Thumbprint')
    $local = Get-S2SLocalCertificate -Thumbprint $thumb
    $out = [ordered]@{
        use                = [string](Get-S2SProp $Ref 'Use')
        thumbprint         = $thumb
        subject            = [string](Get-S2SProp $Ref 'Subject')
        issuer             = [string](Get-S2SProp $Ref 'Issuer')
        notBefore          = ConvertFrom-S2SDate (Get-S2SProp $Ref 'NotBefore')
        notAfter           = ConvertFrom-S2SDate (Get-S2SProp $Ref 'NotAfter')
        effectiveDate      = ConvertFrom-S2SDate (Get-S2SProp $Ref 'EffectiveDate')
        alternativeNames   = (ConvertTo-S2SStringList (Get-S2SProp $Ref 'AlternativeNames'))
        inLocalStore       = ($null -ne $local)
        hasPrivateKey      = ($null -ne $local -and [bool]$local.HasPrivateKey)
        rawData            = ''
    }
    if ($null -ne $local) { $out.rawData = [System.Convert]::ToBase64String($local.RawData) }
    return $out
}

$operations = @{
    'init' = {
        param($a)
        # Skype for Business Server ships the SkypeForBusiness module, Lync
        # Server 2013 the Lync module.
        # https://learn.microsoft.com/powershell/module/microsoft.powershell.core/import-module?view=powershell-5.1
        # https://learn.microsoft.com/powershell/module/microsoft.powershell.core/get-module?view=powershell-5.1
        foreach ($name in @('SkypeForBusiness', 'Lync')) {
            $m = Get-Module -ListAvailable -Name $name | Sort-Object -Property Version -Descending | Select-Object -First 1
            if ($null -ne $m) {
                Import-Module -Name $m.Path -DisableNameChecking
                $script:Module = $m
                break
            }
        }
        if ($null -eq $script:Module) {
            $ex = New-Object System.IO.FileNotFoundException -ArgumentList 'neither the SkypeForBusiness nor the Lync module is installed on this host (Get-Module -ListAvailable found none)'
            throw (New-Object System.Management.Automation.ErrorRecord -ArgumentList $ex, 'S2SModuleNotInstalled', ([System.Management.Automation.ErrorCategory]::ObjectNotFound), 'Import-Module')
        }
        Assert-S2SCommand 'Get-CsPartnerApplication'
        $facts = Get-S2SHostFacts
        $facts.module = [string]$script:Module.Name
        $facts.moduleVersion = [string]$script:Module.Version
        return $facts
    }

    'get-partner-applications' = {
        param($a)
        # -LocalStore reads this Front End's replica of the CMS instead of the CMS.
        # https://learn.microsoft.com/powershell/module/skypeforbusiness/get-cspartnerapplication
        Assert-S2SCommand 'Get-CsPartnerApplication'
        $p = @{}
        if ([bool](Get-S2SArg $a 'localStore' $false)) { $p.LocalStore = $true }
        $apps = @(Get-CsPartnerApplication @p)
        return , @($apps | ForEach-Object { ConvertTo-S2SPartner $_ })
    }

    'get-oauth-configuration' = {
        param($a)
        # https://learn.microsoft.com/powershell/module/skypeforbusiness/get-csoauthconfiguration
        Assert-S2SCommand 'Get-CsOAuthConfiguration'
        $p = @{ Identity = 'Global' }
        if ([bool](Get-S2SArg $a 'localStore' $false)) { $p.LocalStore = $true }
        $c = Get-CsOAuthConfiguration @p
        return [ordered]@{
            serviceName             = [string](Get-S2SProp $c 'ServiceName')
            realm                   = [string](Get-S2SProp $c 'Realm')
            exchangeAutodiscoverUrl = [string](Get-S2SProp $c 'ExchangeAutodiscoverUrl')
        }
    }

    'get-certificates' = {
        param($a)
        # The token issuer (-Type OAuthTokenIssuer; during a roll it lists
        # the current and the next) and the Default certificate, which may
        # serve as the issuer.
        # https://learn.microsoft.com/powershell/module/skypeforbusiness/get-cscertificate
        Assert-S2SCommand 'Get-CsCertificate'
        $issuer = @(Get-CsCertificate -Type OAuthTokenIssuer -ErrorAction SilentlyContinue)
        $default = @(Get-CsCertificate -Type Default -ErrorAction SilentlyContinue)
        return [ordered]@{
            oauthTokenIssuer = @($issuer | ForEach-Object { ConvertTo-S2SCsCertificate $_ })
            default          = @($default | ForEach-Object { ConvertTo-S2SCsCertificate $_ })
        }
    }

    'new-partner-application' = {
        param($a)
        # The MetadataUrl parameter set (-MetadataUrl excludes
        # -ApplicationIdentifier); creating it downloads the metadata at once.
        # https://learn.microsoft.com/powershell/module/skypeforbusiness/new-cspartnerapplication
        Assert-S2SCommand 'New-CsPartnerApplication'
        $p = @{
            Identity              = [string](Get-S2SRequiredArg $a 'identity')
            MetadataUrl           = [string](Get-S2SRequiredArg $a 'metadataUrl')
            ApplicationTrustLevel = (Get-S2STrustLevel $a)
            Enabled               = [bool](Get-S2SArg $a 'enabled' $true)
            Force                 = $true
            Confirm               = $false
        }
        $sid = Get-S2SArg $a 'acceptSecurityIdentifierInformation'
        if ($null -ne $sid) { $p.AcceptSecurityIdentifierInformation = [bool]$sid }
        $null = New-CsPartnerApplication @p
        return (ConvertTo-S2SPartner (Get-CsPartnerApplication -Identity $p.Identity))
    }

    'set-partner-application' = {
        param($a)
        # The Identity parameter set, or MetadataUrl when the URL changes;
        # the MetadataUrl set with the same URL has Lync download the
        # partner's document again (a rotation's refresh).
        # https://learn.microsoft.com/powershell/module/skypeforbusiness/set-cspartnerapplication
        Assert-S2SCommand 'Set-CsPartnerApplication'
        $p = @{ Identity = [string](Get-S2SRequiredArg $a 'identity'); Force = $true; Confirm = $false }
        if ($null -ne (Get-S2SArg $a 'applicationTrustLevel')) { $p.ApplicationTrustLevel = (Get-S2STrustLevel $a) }
        $enabled = Get-S2SArg $a 'enabled'
        if ($null -ne $enabled) { $p.Enabled = [bool]$enabled }
        $sid = Get-S2SArg $a 'acceptSecurityIdentifierInformation'
        if ($null -ne $sid) { $p.AcceptSecurityIdentifierInformation = [bool]$sid }
        $url = Get-S2SArg $a 'metadataUrl'
        if ($url) { $p.MetadataUrl = [string]$url }
        $null = Set-CsPartnerApplication @p
        return (ConvertTo-S2SPartner (Get-CsPartnerApplication -Identity $p.Identity))
    }

    'remove-partner-application' = {
        param($a)
        # https://learn.microsoft.com/powershell/module/skypeforbusiness/remove-cspartnerapplication
        Assert-S2SCommand 'Remove-CsPartnerApplication'
        Remove-CsPartnerApplication -Identity ([string](Get-S2SRequiredArg $a 'identity')) -Force -Confirm:$false
        return [ordered]@{ removed = $true }
    }

    'set-oauth-configuration' = {
        param($a)
        # -ServiceName 00000004-…; -Realm only when the topology sets one
        # (the default is the default SIP domain); -ExchangeAutodiscoverUrl.
        # https://learn.microsoft.com/powershell/module/skypeforbusiness/set-csoauthconfiguration
        Assert-S2SCommand 'Set-CsOAuthConfiguration'
        $p = @{ Identity = 'Global'; Force = $true; Confirm = $false }
        $sn = Get-S2SArg $a 'serviceName'
        if ($sn) { $p.ServiceName = [string]$sn }
        $realm = Get-S2SArg $a 'realm'
        if ($realm) { $p.Realm = [string]$realm }
        $ad = Get-S2SArg $a 'exchangeAutodiscoverUrl'
        if ($ad) { $p.ExchangeAutodiscoverUrl = [string]$ad }
        Set-CsOAuthConfiguration @p
        return [ordered]@{ updated = $true }
    }

    'import-issuer-certificate' = {
        param($a)
        # The CMS parameter set: -Identity Global -Type OAuthTokenIssuer
        # -Path -Password; with -Roll -EffectiveDate to stage a rollover.
        # That parameter set has no -PrivateKeyExportable (only the Local set
        # has it), so none is passed.
        # -Password is typed System.String on this cmdlet (not SecureString),
        # so the one-time password is bound from the request as is; it is on
        # no command line and in no log.
        # https://learn.microsoft.com/powershell/module/skypeforbusiness/import-cscertificate
        Assert-S2SCommand 'Import-CsCertificate'
        $path = [string](Get-S2SRequiredArg $a 'pfxPath')
        try {
            $p = @{
                Identity = 'Global'
                Type     = 'OAuthTokenIssuer'
                Path     = $path
                Password = [string](Get-S2SRequiredArg $a 'pfxPassword')
                Force    = $true
                Confirm  = $false
            }
            $eff = Get-S2SArg $a 'effectiveDate'
            if ($eff) { $p.Roll = $true; $p.EffectiveDate = (ConvertTo-S2SDate $eff) }
            $null = Import-CsCertificate @p
        } finally {
            Remove-S2SKeyFile -Path $path
        }
        return [ordered]@{ imported = $true }
    }

    'set-issuer-certificate' = {
        param($a)
        # Assigns a certificate already in the store, by thumbprint; -Roll
        # -EffectiveDate [datetime] stages it as the next issuer (at least
        # 24 hours before the old one expires).
        # https://learn.microsoft.com/powershell/module/skypeforbusiness/set-cscertificate
        Assert-S2SCommand 'Set-CsCertificate'
        $t = [string](Get-S2SRequiredArg $a 'thumbprint')
        if (-not (Test-S2SThumbprint $t)) {
            $ex = New-Object System.ArgumentException -ArgumentList 'thumbprint must be 40 hexadecimal digits'
            throw (New-Object System.Management.Automation.ErrorRecord -ArgumentList $ex, 'S2SBadArgument', ([System.Management.Automation.ErrorCategory]::InvalidArgument), 'thumbprint')
        }
        $p = @{ Identity = 'global'; Type = 'OAuthTokenIssuer'; Thumbprint = $t; Force = $true; Confirm = $false }
        $eff = Get-S2SArg $a 'effectiveDate'
        if ($eff) { $p.Roll = $true; $p.EffectiveDate = (ConvertTo-S2SDate $eff) }
        $null = Set-CsCertificate @p
        return [ordered]@{ assigned = $true }
    }

    'remove-previous-issuer-certificate' = {
        param($a)
        # After a roll: -Previous removes the certificate the roll replaced.
        # https://learn.microsoft.com/powershell/module/skypeforbusiness/remove-cscertificate
        Assert-S2SCommand 'Remove-CsCertificate'
        Remove-CsCertificate -Identity 'Global' -Type OAuthTokenIssuer -Previous -Force -Confirm:$false
        return [ordered]@{ removed = $true }
    }

    'test-exstorage-connectivity' = {
        param($a)
        # -DeleteItem removes the test item the cmdlet writes to the
        # mailbox, so a probe leaves nothing behind.
        # https://learn.microsoft.com/powershell/module/skypeforbusiness/test-csexstorageconnectivity
        Assert-S2SCommand 'Test-CsExStorageConnectivity'
        $p = @{ SipUri = [string](Get-S2SRequiredArg $a 'sipUri'); DeleteItem = $true }
        try {
            $out = Test-CsExStorageConnectivity @p 2>&1 | Out-String
            return [ordered]@{ ok = $true; output = $out.Trim(); error = '' }
        } catch {
            $rec = ConvertTo-S2SErrorRecord -Record $_
            return [ordered]@{ ok = $false; output = ''; error = $rec.message }
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

package certs

import (
	"crypto/x509"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Info describes cert for reports and responses: thumbprint, subject, DNS
// names, validity and issuer. It never carries key material; hasPrivateKey
// only records whether the key is present. A nil cert gives nil.
func Info(cert *x509.Certificate, hasPrivateKey bool) *pb.CertificateInfo {
	if cert == nil {
		return nil
	}
	return &pb.CertificateInfo{
		Thumbprint:    Thumbprint(cert),
		Subject:       cert.Subject.String(),
		DnsNames:      append([]string(nil), cert.DNSNames...),
		NotBefore:     timestamppb.New(cert.NotBefore),
		NotAfter:      timestamppb.New(cert.NotAfter),
		HasPrivateKey: hasPrivateKey,
		Issuer:        cert.Issuer.String(),
	}
}

// goocsp: judge an OCSP response the way Go servers do when they staple (golang.org/x/crypto/ocsp).
//
// Usage: goocsp RESPONSE.der ISSUER.pem
// Prints "good", "revoked" or "unknown" and exits 0 when ocsp.ParseResponse(der, issuer) accepts the
// response (its signature verifies against the issuer, or against a certificate in `certs` that the
// issuer signed); prints the error and exits 1 otherwise; exits 2 on bad arguments.
package main

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"

	"golang.org/x/crypto/ocsp"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: goocsp RESPONSE.der ISSUER.pem")
		os.Exit(2)
	}
	der, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	raw, err := os.ReadFile(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		fmt.Fprintln(os.Stderr, "issuer: no PEM block")
		os.Exit(2)
	}
	issuer, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		fmt.Fprintln(os.Stderr, "issuer:", err)
		os.Exit(2)
	}
	resp, err := ocsp.ParseResponse(der, issuer)
	if err != nil {
		fmt.Println("rejected:", err)
		os.Exit(1)
	}
	switch resp.Status {
	case ocsp.Good:
		fmt.Println("good")
	case ocsp.Revoked:
		fmt.Println("revoked")
	default:
		fmt.Println("unknown")
	}
}

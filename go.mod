module github.com/gosec-ipsec/gosec

go 1.26

module membrane/cni/membrane-cni

go 1.19

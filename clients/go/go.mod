module wxtoken

go 1.19

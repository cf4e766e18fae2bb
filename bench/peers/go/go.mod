module plaza/bench/peers/go

go 1.19

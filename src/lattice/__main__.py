from lattice.cli.main import main

main()

from reelserve.cli.main import main

main()

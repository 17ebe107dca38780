from adserver.cli import main

main()

from coordctl.cli import main

main()

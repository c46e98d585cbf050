from coordd.cli import main

main()

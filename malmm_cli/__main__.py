from malmm_cli.cli import main

main()

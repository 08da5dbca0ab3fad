from lit_vattn.cli import cli_main

cli_main()

from lit_vattn.train.cli import cli_main

cli_main()

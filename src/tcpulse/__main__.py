from tcpulse.cli.main import main

main()

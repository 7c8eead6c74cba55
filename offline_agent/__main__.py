from offline_agent.cli import main

main()

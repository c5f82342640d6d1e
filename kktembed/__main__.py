from kktembed.cli import main

main()

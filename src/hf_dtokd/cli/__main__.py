from hf_dtokd.cli import main

main()

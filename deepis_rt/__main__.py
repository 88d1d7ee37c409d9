from deepis_rt.cli import main

main(prog_name="deepis-rt")

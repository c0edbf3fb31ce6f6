from cnnc.cli import program

program()

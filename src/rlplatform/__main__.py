from rlplatform.cli import app

app(prog_name="rlplatform")

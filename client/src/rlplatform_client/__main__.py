from rlplatform_client.cli import app

app(prog_name="rlplatform-client")

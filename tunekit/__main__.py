from tunekit.cli import app

app(prog_name="tunekit")

"""CLI subcommands, one module each; `powersampling.cli` registers them."""

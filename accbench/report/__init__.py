"""Reports: console tables, Markdown and HTML."""

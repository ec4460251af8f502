"""Pool views shared by the live CLI, the web page and the view service (see model.py for the data)."""

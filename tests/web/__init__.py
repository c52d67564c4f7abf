"""afterwork inside web apps, tested over HTTP against a real uvicorn server."""

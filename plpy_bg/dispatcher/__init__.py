"""The dispatcher process and its protocol; `client` is the backend's side."""

"""The job engine's shared pieces: handles, states, the row codec and the ident map."""

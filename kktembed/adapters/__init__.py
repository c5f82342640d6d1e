"""Architecture adapters: the built-in MLP and CNN, and the interface plugins implement."""

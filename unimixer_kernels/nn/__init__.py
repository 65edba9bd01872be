"""Drop-in nn.Modules built on the public ops."""

"""Training and evaluation of the bundled DALL·E on the shapes world."""

"""A student's own course project: model.py (the stencil) and train.py (the loop)."""

"""ferry's trainer: the course's softmax network (numpy), NN+SVM, and TensorFlow's quickstart.

Shipped alone to the VM: imports numpy, scikit-learn, Pillow and (tf-quickstart only)
TensorFlow, never `infra` or `jobs`. Run by hand with `python -m trainer --help`.
"""

__version__ = "0.1.0"

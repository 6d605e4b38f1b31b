"""reportgen: batch CNN-visualization reports (kernels, feature maps, CAMs), cached, as HTML and PDF."""

__version__ = "0.1.0"

"""dicomnode training module: fits the networks of ``dicomnode.nets`` and exports model cards.

It imports ``dicomnode.nets`` and the degradations, never the server.
"""

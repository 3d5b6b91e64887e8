"""The bundled billing app: ``handlers:registry`` is what ``oprunner serve`` runs by default.

Handlers live beside their specs' tree (``handlers/billing/capture_payment.py``); each is
installed here with one ``install_op`` line.
"""

from runner import OperationRegistry

registry = OperationRegistry()

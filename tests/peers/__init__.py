"""Real HTTP servers for the forwarder and channel tests that the demo does not run:
``openemis`` (OpenEMIS Core's login and absence API), ``relay`` (a province's relay receiver
that verifies the gateways' Ed25519 signatures) and ``sms`` (an SMS brandname gateway). They are
``sim.peers.LoopbackServer``s, like the Ed-Fi, Zalo and webhook peers in sim/peers/.
"""

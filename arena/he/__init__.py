"""CKKS machinery behind the `he` defense's encrypted channel: the scheme wrapper and slot packing
(`ckks`), the server's slot-packed linear layer (`server`), SEAL's ciphertext bytes and exact
modular arithmetic in numpy (`sealio`), the coefficient packing (`coeff`) and the client-side
channel (`channel`).

Same layer as `protocol`; may use `protocol.channel`. Order inside: ckks <- server, sealio <- coeff
<- channel. tenseal is imported only when a channel is built.
"""

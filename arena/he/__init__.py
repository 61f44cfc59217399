"""CKKS machinery behind the `he` defense's encrypted channel: the scheme wrapper (`ckks`), the
server's encrypted linear layer (`server`) and the client-side channel (`channel`).

Same layer as `protocol`; may use `protocol.channel`. Order inside: ckks <- server <- channel.
tenseal is imported only when a channel is built.
"""

"""The split-learning protocol: the cut (`split`), the wire (`channel`), client cost accounting
(`cost`), what a run records (`transcript`), the training loop and its defense hooks (`train`),
and the only window an attack gets on a run (`view`).

Imports models/data and the vocabulary only. Order inside: split, channel, cost, transcript <- train;
transcript <- view.
"""

"""Training the fraud model: data, the torch model, deterministic training, evaluation, the
validation gate a candidate must pass, and the model store its versions live in.
"""

"""Text classification: a head on a fine-tuned language model, the engine of
`ismail finetune --task classify`, `ismail classify` and classifier evaluation.

    from ismail_core.classify.predict import TextClassifier

    clf = TextClassifier.load("runs/tiny-classify")
    clf.predict(["Efendiler, ..."])  # [Prediction(label="1906-1922", scores={...})]

Modules: data (labelled records, label mapping, held-out split, encoding), builtin (the
offline Turkish set: speech passages labelled by era), model (TransformerClassifier, which
parameters train), metrics (accuracy, macro-F1, confusion matrix), trainer, predict, cli.
"""

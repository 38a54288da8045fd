"""The text family: token ids of a message in, class probabilities out (Kim's CNN, the
article's convolution stack, a word + character hybrid), beside TF-IDF baselines."""

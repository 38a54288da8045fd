"""The series family: a window of values in, the next value out (LSTM, MLP), and the
article's LSTM-vs-MLP lag experiment."""

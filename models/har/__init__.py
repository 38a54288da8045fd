"""The HAR family: 80x3 accelerometer windows in, activity probabilities out (CNN, LSTM),
with the feature + gradient-boosting baseline they are compared against."""

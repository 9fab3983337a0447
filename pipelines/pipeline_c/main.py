"""pipeline_c: the smallest pipeline there is: only main.py, no metadata, no requirements."""
print("pipeline_c: hello from a folder with just main.py")

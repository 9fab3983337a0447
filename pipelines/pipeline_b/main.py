"""pipeline_b: a small data processing step. Its metadata lives in data_processor.json
(not pipeline.json), which discovery finds because it is the folder's only JSON file."""
import json
import statistics

readings = [12.5, 13.1, 11.8, 14.2, 12.9, 13.7]
summary = {
    "count": len(readings),
    "mean": round(statistics.mean(readings), 3),
    "stdev": round(statistics.stdev(readings), 3),
    "max": max(readings),
}
print(json.dumps(summary))

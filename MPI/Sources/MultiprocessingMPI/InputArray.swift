/// The inputs of a call as one array, the form batches are cut from.
///
/// The pool's calls are generic over the sequence and, called from another module, run unspecialised:
/// there `Array(inputs)` walks the sequence an element at a time through its witnesses, about 100 ns
/// an input for a `Range<Int>` (a millisecond for 10,000 inputs, longer than the map itself). An
/// array is taken as it is, contiguous storage is copied in one go, and `Int` ranges are built by
/// code specialised here; any other sequence is walked as before.
func inputArray<Inputs: Sequence>(_ inputs: Inputs) -> [Inputs.Element] {
    if let array = inputs as? [Inputs.Element] { return array }
    if Inputs.Element.self == Int.self {
        // The element type is Int: an [Int] is an [Inputs.Element] (an array is one reference whatever
        // its element type).
        if let range = inputs as? Range<Int> { return unsafeBitCast(Array(range), to: [Inputs.Element].self) }
        if let range = inputs as? ClosedRange<Int> { return unsafeBitCast(Array(range), to: [Inputs.Element].self) }
    }
    if let copied = inputs.withContiguousStorageIfAvailable({ Array($0) }) { return copied }
    return Array(inputs)
}
